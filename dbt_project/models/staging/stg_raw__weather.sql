with

source as (

    select * from {{ source('raw', 'weather') }}

),

renamed as (

    select
        cast(observed_at as timestamp) as observed_at,
        time_bucket(interval 15 minute, cast(observed_at as timestamp)) as bucket_start,
        cast(city as varchar) as city,
        cast(temperature_c as double) as temperature_c,
        cast(precipitation_mm as double) as precipitation_mm,
        cast(event_date as date) as event_date

    from source

)

select * from renamed
