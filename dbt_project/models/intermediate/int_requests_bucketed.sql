{#- Ride requests of the window counted per cell, service type and 15-minute bucket. -#}

with

requests as (

    select * from {{ ref('stg_raw__ride_requests') }}
    where {{ in_window('requested_at') }}
      and service_type in ({{ service_types_sql() }})

),

bucketed as (

    select
        hex_id,
        service_type,
        bucket_start,
        count(*) as requests,
        count(status) as requests_with_status,
        count(*) filter (where status = 'completed') as completed,
        count(*) filter (where status = 'cancelled') as cancelled,
        count(*) filter (where status = 'unfulfilled') as unfulfilled,
        count(rider_id) as requests_with_rider,
        count(distinct rider_id) as riders,
        count(accepted) as offered,
        count(*) filter (where accepted) as accepted,
        -- exact decimal sum, so reruns give bit-identical means whatever the summation order
        cast(avg(cast(quoted_surge as decimal(18, 6))) as double) as mean_quoted_surge

    from requests
    group by hex_id, service_type, bucket_start

)

select * from bucketed
