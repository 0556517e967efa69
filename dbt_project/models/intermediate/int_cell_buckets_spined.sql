{#-
  The zero-fill grid of the facts: every 15-minute bucket of the window on a UTC day D that holds at least
  one ride request x every cell active on D (dim_cells.active_from <= D) x every service type in
  var('service_types').

  Both conditions read requests up to and including D only, so the grid of a day is the same whether the
  day is built alone, in a backfill, or rebuilt after later days have landed. A day without any request
  has no feed (nothing landed yet, or an outage) and gets no rows, which also clamps the default all-time
  window to the city's history.
-#}

with

cells as (

    select hex_id, active_from from {{ ref('dim_cells') }}

),

service_types as (

    select cast(unnest([{{ service_types_sql() }}]) as integer) as service_type

),

request_days as (

    -- the UTC days the window touches that hold a request (requests outside the window still count)
    select distinct cast(requested_at as date) as request_day

    from {{ ref('stg_raw__ride_requests') }}
    where requested_at >= date_trunc('day', {{ window_start() }})
      and requested_at < date_trunc('day', {{ window_end() }} - interval 1 microsecond) + interval 1 day

),

buckets as (

    select
        request_day,
        unnest(generate_series(
            greatest(cast(request_day as timestamp), {{ window_start() }}),
            least(cast(request_day as timestamp) + interval 1 day, {{ window_end() }}) - interval 15 minute,
            interval 15 minute
        )) as bucket_start

    from request_days

),

spined as (

    select
        cells.hex_id,
        service_types.service_type,
        buckets.bucket_start

    from buckets
    inner join cells
        on cells.active_from <= buckets.request_day
    cross join service_types

)

select * from spined
