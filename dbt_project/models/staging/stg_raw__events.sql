with

source as (

    select * from {{ source('raw', 'events') }}

),

renamed as (

    select
        cast(event_id as varchar) as event_id,
        cast(venue_name as varchar) as venue_name,
        cast(hex_id as varchar) as venue_hex_id,
        cast(venue_lat as double) as venue_lat,
        cast(venue_lng as double) as venue_lng,
        cast(starts_at as timestamp) as starts_at,
        cast(ends_at as timestamp) as ends_at,
        time_bucket(interval 15 minute, cast(starts_at as timestamp)) as bucket_start,
        cast(expected_attendance as bigint) as expected_attendance,
        cast(event_date as date) as event_date

    from source

)

select * from renamed
