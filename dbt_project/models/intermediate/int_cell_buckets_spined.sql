{#-
  The zero-fill grid of the facts: every active cell x every service type in var('service_types') x
  every 15-minute bucket of the window.

  The window is clamped to the UTC days that lie between the first and the last day holding any ride
  request, so the default all-time window covers exactly the city's history. The clamp reads all of
  raw.ride_requests (not the window), hence a day's partition run and a many-day backfill run produce
  the same grid for that day.
-#}

with

cells as (

    select hex_id from {{ ref('dim_cells') }}

),

service_types as (

    select cast(unnest([{{ service_types_sql() }}]) as integer) as service_type

),

history as (

    select
        cast(date_trunc('day', min(requested_at)) as timestamp) as first_day,
        cast(date_trunc('day', max(requested_at)) as timestamp) + interval 1 day as end_day

    from {{ ref('stg_raw__ride_requests') }}

),

bounds as (

    select
        greatest({{ window_start() }}, first_day) as spine_start,
        least({{ window_end() }}, end_day) as spine_end

    from history
    where first_day is not null

),

buckets as (

    select
        unnest(generate_series(
            spine_start, spine_end - interval 15 minute, interval 15 minute
        )) as bucket_start

    from bounds
    where spine_start < spine_end

),

spined as (

    select
        cells.hex_id,
        service_types.service_type,
        buckets.bucket_start

    from cells
    cross join service_types
    cross join buckets

)

select * from spined
