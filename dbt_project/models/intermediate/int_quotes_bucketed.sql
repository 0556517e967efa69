{#-
  Price quotes of the window per cell, service type and bucket. Every service type is kept (the fact's
  join to the grid drops the others), so the set of days present tells which days have a quote feed.
-#}

with

quotes as (

    select * from {{ ref('stg_raw__price_quotes') }}
    where {{ in_window('quoted_at') }}

),

bucketed as (

    select
        hex_id,
        service_type,
        bucket_start,
        count(*) as quotes,
        count(*) filter (where converted) as converted_quotes

    from quotes
    group by hex_id, service_type, bucket_start

)

select * from bucketed
