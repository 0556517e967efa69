with

source as (

    select * from {{ source('raw', 'price_quotes') }}

),

renamed as (

    select
        cast(quote_id as varchar) as quote_id,
        cast(quoted_at as timestamp) as quoted_at,
        time_bucket(interval 15 minute, cast(quoted_at as timestamp)) as bucket_start,
        cast(hex_id as varchar) as hex_id,
        cast(service_type as integer) as service_type,
        cast(lat as double) as lat,
        cast(lng as double) as lng,
        cast(surge_multiplier as double) as surge_multiplier,
        cast(converted as boolean) as converted,
        cast(event_date as date) as event_date

    from source

)

select * from renamed
