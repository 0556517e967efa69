with

source as (

    select * from {{ source('raw', 'ride_requests') }}

),

renamed as (

    select
        cast(request_id as varchar) as request_id,
        cast(requested_at as timestamp) as requested_at,
        time_bucket(interval 15 minute, cast(requested_at as timestamp)) as bucket_start,
        cast(hex_id as varchar) as hex_id,
        cast(service_type as integer) as service_type,
        cast(pickup_lat as double) as pickup_lat,
        cast(pickup_lng as double) as pickup_lng,
        cast(dropoff_lat as double) as dropoff_lat,
        cast(dropoff_lng as double) as dropoff_lng,
        cast(rider_id as varchar) as rider_id,
        lower(cast(status as varchar)) as status,
        cast(quoted_surge as double) as quoted_surge,
        cast(accepted as boolean) as accepted,
        cast(event_date as date) as event_date

    from source

)

select * from renamed
