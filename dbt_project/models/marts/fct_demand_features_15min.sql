{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['hex_id', 'service_type', 'bucket_start'],
        on_schema_change='sync_all_columns',
        full_refresh=false,
        pre_hook="{{ delete_window() }}",
    )
}}

{#-
  Model features per (hex_id, service_type, bucket_start) at the forecast origin
  feature_ts = bucket_start + 15 min (the moment the bucket is complete).

  No column reads a bucket starting at or after feature_ts: lags and sums look back from this bucket,
  the weekly columns read buckets at least 7 days minus 90 minutes back, the daily ones at least 1 day
  minus 105 minutes back, weather is the observation at or before bucket_start. The one forward-looking
  input is the published event schedule.

  Weekly and daily lookbacks and every calendar column (hour, minute of day, day of week, weekend,
  holiday) follow the city's wall clock (var('timezone'), an IANA name): "the same bucket last week" is
  the same local time 7 days earlier, so a DST change does not shift the weekly pattern by an hour, and a
  holiday runs from local midnight to local midnight. Where the clock falls back, the first of the two buckets sharing a local time is
  the one a lookback reads; where it springs forward, the skipped local hour gives NULL.

  Lookbacks join on time, never on row offsets: every series (cell, service type) numbers its buckets
  from a fixed origin, so "n buckets earlier" is the equi-join row_key - n. A bucket missing from the fact
  (a cell that became active later, a partition not built yet) gives NULL, not another bucket's value.
  Trailing sums are running totals differenced between the current row and the time-joined first bucket
  of the period, NULL unless every bucket of the period is present.
  The facts are read back to start - 29 days; only rows with bucket_start in [start, end) are written.
  A row of UTC day D reads nothing landed after D's partition (events by event_date <= D), so a backfill
  and daily runs write the same rows.
-#}

{%- set lags = [1, 2, 3] -%}
{%- set horizons = range(1, 7) -%}
{%- set trailing = [('1h', 4), ('3h', 12), ('24h', 96)] -%}
{%- set buckets_per_week = 7 * 24 * 4 -%}
{%- set buckets_per_day = 24 * 4 -%}
{%- set tz = var('timezone', env_var('PULSE_CITY__TIMEZONE', 'America/New_York')) -%}
{#- The local times of day a short window's lookbacks read: from its start less a neighbour bucket to its end
   plus the furthest target and its neighbour, with an hour each side for a clock change (minutes). -#}
{%- set tod_before = 15 + 60 -%}
{%- set tod_after = 15 * (horizons | length) + 15 + 60 -%}

with

demand as (

    select
        hex_id,
        service_type,
        bucket_start,
        requests,
        price_conversion,
        acceptance_rate,
        mean_quoted_surge

    from {{ ref('fct_demand_15min') }}
    where bucket_start >= {{ window_start() }} - interval 29 day
      and bucket_start < {{ window_end() }}
    {%- if window_minutes() + tod_before + tod_after < 24 * 60 %}
      -- a window shorter than a day (a bucket update) reads only what its rows look back to: the last 25
      -- hours whole (lags, trailing sums), and before that the local times of day its weekly and daily
      -- lookbacks land on, with their neighbours; with a margin for a clock change. The rows it writes are
      -- those of a whole-day run, which the intraday-equals-batch check asserts.
      and (
          bucket_start >= {{ window_start() }} - interval 25 hour
          or (
              ({{ local_minute('bucket_start', tz) }}
                  - {{ local_minute(window_start() ~ ' - interval ' ~ tod_before ~ ' minute', tz) }}
                  + 2 * 24 * 60) % (24 * 60)
              < {{ window_minutes() + tod_before + tod_after }}
          )
      )
    {%- endif %}

),

series as (

    -- a dense number per (cell, service type) series, for compact integer join keys
    select
        hex_id,
        service_type,
        row_number() over (order by hex_id, service_type) as series_no

    from (select distinct hex_id, service_type from demand)

),

clocked as (

    -- local_start: the bucket's start on the city's wall clock (naive local time)
    select
        demand.*,
        series.series_no,
        timezone('{{ tz }}', timezone('UTC', demand.bucket_start)) as local_start

    from demand
    inner join series
        on series.hex_id = demand.hex_id
        and series.service_type = demand.service_type

),

smoothed as (

    -- requests over this bucket and its two neighbours (on time, so a missing bucket is just absent)
    select
        *,
        sum(requests) over neighbours as requests_3_sum,
        count(*) over neighbours as requests_3_n,
        date_diff('minute', timestamp '2000-01-03 00:00:00', local_start) // 15 as local_bucket_no

    from clocked
    window neighbours as (
        partition by series_no
        order by bucket_start
        range between interval 15 minute preceding and interval 15 minute following
    )

),

keyed as materialized (

    -- row_key = series_no * 2^32 + bucket_no, with bucket_no counting 15-minute buckets: the bucket
    -- `n` buckets before a row has key row_key - n, so every lookback below is an equi-join on time.
    -- local_key is the same on the local clock, for the weekly and daily lookbacks.
    select
        hex_id,
        service_type,
        bucket_start,
        requests,
        price_conversion,
        acceptance_rate,
        mean_quoted_surge,
        series_no,
        series_no * 4294967296
            + date_diff('minute', timestamp '2000-01-03 00:00:00', bucket_start) // 15 as row_key,
        series_no * 4294967296 + local_bucket_no as local_key,
        -- where the clock falls back two buckets share a local time: lookbacks read the first
        row_number() over (partition by series_no, local_bucket_no order by bucket_start) = 1
            as first_at_local_time,
        local_start,
        hour(local_start) * 60 + minute(local_start) as local_minute_of_day,
        isodow(local_start) - 1 as local_day_of_week,
        -- running totals: the sum over buckets [a, b] is running(b) - running(a) + requests(a), and it
        -- covers every bucket in between when the row counts differ by exactly the number of buckets
        sum(requests) over series_history as requests_running,
        count(*) over series_history as rows_running,
        -- mean of this bucket and the same local time of week 1, 2 and 3 weeks earlier, over the weeks
        -- present; then the same over this bucket and its neighbours (up to 12 buckets)
        avg(requests) over same_time_of_week_4w as requests_tow_mean_4w,
        sum(requests_3_sum) over same_time_of_week_4w
            / sum(requests_3_n) over same_time_of_week_4w as requests_tow_smooth_4w,
        -- mean over this bucket and its neighbours at the same local time of day, this day and the 6
        -- before (up to 21 buckets)
        sum(requests_3_sum) over same_time_of_day_7d
            / sum(requests_3_n) over same_time_of_day_7d as requests_tod_smooth_7d

    from smoothed
    window
        series_history as (
            partition by series_no
            order by bucket_start
            rows between unbounded preceding and current row
        ),
        same_time_of_week_4w as (
            partition by series_no, local_bucket_no % {{ buckets_per_week }}
            order by local_start
            range between interval 21 day preceding and current row
        ),
        same_time_of_day_7d as (
            partition by series_no, local_bucket_no % {{ buckets_per_day }}
            order by local_start
            range between interval 6 day preceding and current row
        )

),

history as materialized (

    select
        current_rows.hex_id,
        current_rows.service_type,
        current_rows.bucket_start,
        current_rows.requests,
        {% for lag in lags %}
        lag_{{ lag }}.requests as requests_lag_{{ lag }},
        {% endfor %}
        {% for name, buckets in trailing %}
        {%- set first = 'lag_' ~ (buckets - 1) if (buckets - 1) in lags else 'first_' ~ name %}
        case
            when current_rows.rows_running - {{ first }}.rows_running = {{ buckets - 1 }}
                then cast(
                    current_rows.requests_running - {{ first }}.requests_running + {{ first }}.requests
                    as integer
                )
        end as requests_sum_{{ name }},
        {% endfor %}
        {% for k in horizons %}
        ahead_{{ k }}.requests as requests_last_week_ahead_{{ k }},
        ahead_{{ k }}.requests_tow_mean_4w as tow_mean_4w_ahead_{{ k }},
        ahead_{{ k }}.requests_tow_smooth_4w as tow_smooth_4w_ahead_{{ k }},
        day_ahead_{{ k }}.requests_tod_smooth_7d as tod_smooth_7d_ahead_{{ k }},
        {% endfor %}
        current_rows.local_start,
        current_rows.local_minute_of_day,
        current_rows.local_day_of_week,
        current_rows.price_conversion,
        current_rows.acceptance_rate,
        current_rows.mean_quoted_surge,
        current_rows.series_no,
        current_rows.row_key

    from keyed as current_rows
    {% for lag in lags %}
    left join keyed as lag_{{ lag }}
        on lag_{{ lag }}.row_key = current_rows.row_key - {{ lag }}
    {% endfor %}
    {% for name, buckets in trailing if (buckets - 1) not in lags %}
    -- first bucket of the trailing {{ name }}: {{ buckets - 1 }} buckets back
    left join keyed as first_{{ name }}
        on first_{{ name }}.row_key = current_rows.row_key - {{ buckets - 1 }}
    {% endfor %}
    {% for k in horizons %}
    -- the target {{ k }} bucket(s) after this one, one week and one day earlier on the local clock: the
    -- target's own local time, so a clock change between the row and its target does not shift it by an hour
    {%- set target_local_key -%}
        current_rows.series_no * 4294967296 + date_diff(
            'minute', timestamp '2000-01-03 00:00:00',
            timezone('{{ tz }}', timezone('UTC', current_rows.bucket_start + interval {{ 15 * k }} minute))
        ) // 15
    {%- endset %}
    left join keyed as ahead_{{ k }}
        on ahead_{{ k }}.local_key = {{ target_local_key }} - {{ buckets_per_week }}
        and ahead_{{ k }}.first_at_local_time
    left join keyed as day_ahead_{{ k }}
        on day_ahead_{{ k }}.local_key = {{ target_local_key }} - {{ buckets_per_day }}
        and day_ahead_{{ k }}.first_at_local_time
    {% endfor %}
    where {{ in_window('current_rows.bucket_start') }}

),

series_neighbours as (

    -- (series, neighbour series of the same service type); only cells present in the facts take part,
    -- so a neighbour counts exactly when it is an active cell with a row at that bucket
    select
        cell_series.series_no,
        neighbour_series.series_no as neighbour_series_no,
        neighbours.ring

    from {{ ref('stg_raw__cell_neighbours') }} as neighbours
    inner join series as cell_series
        on cell_series.hex_id = neighbours.hex_id
    inner join series as neighbour_series
        on neighbour_series.hex_id = neighbours.neighbour_id
        and neighbour_series.service_type = cell_series.service_type
    where neighbours.ring in (1, 2)

),

neighbour_requests as (

    select
        series_neighbours.series_no * 4294967296
            + (history.row_key - history.series_no * 4294967296) as row_key,
        count(*) filter (where series_neighbours.ring = 1) as ring1_cells,
        sum(history.requests_sum_1h) filter (where series_neighbours.ring = 1) as ring1_requests_1h,
        count(*) filter (where series_neighbours.ring = 2) as ring2_cells,
        sum(history.requests_sum_1h) filter (where series_neighbours.ring = 2) as ring2_requests_1h

    from history
    inner join series_neighbours
        on series_neighbours.neighbour_series_no = history.series_no
    group by 1

),

weather_observations as (

    -- one observation per time (averaged should a warehouse hold several cities' rows)
    select
        observed_at,
        cast(avg(cast(temperature_c as decimal(18, 6))) as double) as temperature_c,
        cast(avg(cast(precipitation_mm as decimal(18, 6))) as double) as precipitation_mm

    from {{ ref('stg_raw__weather') }}
    where observed_at >= {{ window_start() }} - interval 3 hour
      and observed_at < {{ window_end() }}
    group by observed_at

),

window_buckets as (

    select distinct bucket_start from history

),

weather as (

    -- latest observation at or before bucket_start, if it is at most 3 hours old
    select
        window_buckets.bucket_start,
        case
            when weather_observations.observed_at >= window_buckets.bucket_start - interval 3 hour
                then weather_observations.temperature_c
        end as temperature_c,
        case
            when weather_observations.observed_at >= window_buckets.bucket_start - interval 3 hour
                then weather_observations.precipitation_mm
        end as precipitation_mm

    from window_buckets
    asof left join weather_observations
        on window_buckets.bucket_start >= weather_observations.observed_at

),

event_feed as (

    -- events are a schedule: once the feed has landed an event (by the bucket's day), "no event nearby"
    -- is a real 0
    select min(event_date) as first_event_date from {{ ref('stg_raw__events') }}

),

event_attendance as (

    select * from {{ ref('int_event_attendance_bucketed') }}

),

holidays as (

    select distinct cast("date" as date) as holiday_date from {{ ref('holidays') }}

),

supply as (

    select * from {{ ref('fct_supply_15min') }}
    where {{ in_window('bucket_start') }}

),

features as (

    select
        history.hex_id,
        history.service_type,
        history.bucket_start,
        history.bucket_start + interval 15 minute as feature_ts,

        -- demand history
        history.requests,
        {% for lag in lags %}
        history.requests_lag_{{ lag }},
        {% endfor %}
        {% for name, buckets in trailing %}
        history.requests_sum_{{ name }},
        {% endfor %}
        {% for k in horizons %}
        history.requests_last_week_ahead_{{ k }},
        history.tow_mean_4w_ahead_{{ k }},
        history.tow_smooth_4w_ahead_{{ k }},
        history.tod_smooth_7d_ahead_{{ k }},
        {% endfor %}

        -- neighbourhood: 0 when no active neighbour is present at that ring
        case
            when coalesce(neighbour_requests.ring1_cells, 0) = 0 then 0
            else cast(neighbour_requests.ring1_requests_1h as integer)
        end as neighbour_requests_1h,
        case
            when coalesce(neighbour_requests.ring2_cells, 0) = 0 then 0
            else cast(neighbour_requests.ring2_requests_1h as integer)
        end as neighbour2_requests_1h,

        -- calendar of the bucket on the city's clock
        hour(history.local_start) as hour_of_day,
        history.local_minute_of_day as minute_of_day,
        history.local_day_of_week as day_of_week,
        history.local_day_of_week >= 5 as is_weekend,
        holidays.holiday_date is not null as is_holiday,
        history.local_minute_of_day,
        history.local_day_of_week,

        -- weather
        weather.temperature_c,
        weather.precipitation_mm,

        -- events (NULL when the city has no event feed)
        case
            when event_feed.first_event_date <= cast(history.bucket_start as date)
                then coalesce(event_attendance.attendance_ending_1h, 0)
        end as event_attendance_ending_1h,
        case
            when event_feed.first_event_date <= cast(history.bucket_start as date)
                then coalesce(event_attendance.attendance_live, 0)
        end as event_attendance_live,

        -- supply and market (NULL when absent)
        supply.idle_drivers,
        supply.busy_drivers,
        history.price_conversion,
        history.acceptance_rate,
        history.mean_quoted_surge

    from history
    left join neighbour_requests
        on neighbour_requests.row_key = history.row_key
    left join weather
        on weather.bucket_start = history.bucket_start
    cross join event_feed
    left join event_attendance
        on event_attendance.hex_id = history.hex_id
        and event_attendance.bucket_start = history.bucket_start
    left join holidays
        on holidays.holiday_date = cast(history.local_start as date)
    left join supply
        on supply.hex_id = history.hex_id
        and supply.service_type = history.service_type
        and supply.bucket_start = history.bucket_start

)

select * from features
