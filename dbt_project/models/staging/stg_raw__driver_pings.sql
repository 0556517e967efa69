with

source as (

    select * from {{ source('raw', 'driver_pings') }}

),

renamed as (

    select
        cast(driver_id as varchar) as driver_id,
        cast(pinged_at as timestamp) as pinged_at,
        time_bucket(interval 15 minute, cast(pinged_at as timestamp)) as bucket_start,
        cast(hex_id as varchar) as hex_id,
        cast(service_type as integer) as service_type,
        cast(lat as double) as lat,
        cast(lng as double) as lng,
        lower(cast(status as varchar)) as status,
        cast(event_date as date) as event_date

    from source

)

select * from renamed
