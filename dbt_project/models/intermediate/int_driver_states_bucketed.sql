{#-
  The state of each driver in each 15-minute bucket of the window: the cell, service type and status of
  the driver's LAST ping in that bucket. A driver therefore counts once per bucket, in the cell where the
  bucket left them. Ties on pinged_at are broken on status then cell so reruns pick the same ping.
-#}

with

pings as (

    select * from {{ ref('stg_raw__driver_pings') }}
    where {{ in_window('pinged_at') }}

),

last_pings as (

    select
        driver_id,
        bucket_start,
        hex_id,
        service_type,
        status

    from pings
    qualify row_number() over (
        partition by driver_id, bucket_start
        order by pinged_at desc, status, hex_id, service_type
    ) = 1

)

select * from last_pings
