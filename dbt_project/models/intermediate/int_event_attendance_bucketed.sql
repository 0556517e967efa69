{#-
  Expected event attendance near each cell, per 15-minute bucket of the window, as seen at the bucket's
  forecast origin feature_ts = bucket_start + 15 min.

  "Near" = the venue's cell is the cell itself or one of its ring-1/ring-2 neighbours. cell_neighbours
  lists the neighbours of every cell that had a request, so it is read from the cell's side
  (neighbour_id = venue cell): a venue in a cell without requests still reaches the cells around it.

  - attendance_ending_1h: events with ends_at in [feature_ts, feature_ts + 1 h), i.e. the buckets b with
    ends_at - 75 min < b <= ends_at - 15 min (the published schedule, known in advance).
  - attendance_live: events with starts_at <= feature_ts < ends_at, i.e. starts_at - 15 min <= b < ends_at - 15 min.

  Events land in the partition of their start day (event_date). A bucket of day D reads only events landed
  by D's partition (event_date <= D): an event starting just after midnight is not yet known when D is
  built, and reading it would make D's rows change once D + 1 lands.
-#}

with

events as (

    select * from {{ ref('stg_raw__events') }}
    where ends_at >= {{ window_start() }}
      and event_date <= cast({{ window_end() }} as date)

),

neighbours as (

    select * from {{ ref('stg_raw__cell_neighbours') }}
    where ring <= 2

),

event_cells as (

    select
        event_id,
        venue_hex_id as hex_id,
        event_date,
        starts_at,
        ends_at,
        expected_attendance
    from events

    union

    select
        events.event_id,
        neighbours.hex_id,
        events.event_date,
        events.starts_at,
        events.ends_at,
        events.expected_attendance
    from events
    inner join neighbours
        on neighbours.neighbour_id = events.venue_hex_id

),

ending as (

    select
        event_cells.hex_id,
        event_cells.event_date,
        time_bucket(interval 15 minute, event_cells.ends_at - interval 15 minute)
            - to_minutes(cast(15 * steps.step as bigint)) as bucket_start,
        event_cells.expected_attendance

    from event_cells
    cross join range(4) as steps (step)

),

live_candidates as (

    select
        hex_id,
        event_date,
        starts_at,
        ends_at,
        expected_attendance,
        unnest(generate_series(
            greatest(
                time_bucket(interval 15 minute, starts_at - interval 15 minute),
                {{ window_start() }}
            ),
            least(ends_at - interval 15 minute, {{ window_end() }}),
            interval 15 minute
        )) as bucket_start

    from event_cells

),

live as (

    select
        hex_id,
        event_date,
        bucket_start,
        expected_attendance

    from live_candidates
    where bucket_start >= starts_at - interval 15 minute
      and bucket_start < ends_at - interval 15 minute

),

combined as (

    select hex_id, event_date, bucket_start, expected_attendance as ending, 0 as live from ending
    union all
    select hex_id, event_date, bucket_start, 0 as ending, expected_attendance as live from live

),

bucketed as (

    select
        hex_id,
        bucket_start,
        cast(sum(ending) as bigint) as attendance_ending_1h,
        cast(sum(live) as bigint) as attendance_live

    from combined
    where {{ in_window('bucket_start') }}
      -- known by the bucket's day partition
      and event_date <= cast(bucket_start as date)
    group by hex_id, bucket_start

)

select * from bucketed
