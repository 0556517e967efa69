{#-
  Active cells: H3 cells with at least var('min_cell_requests') ride requests, each with the UTC day its
  requests up to and including that day first reach the threshold (active_from). A fact day D zero-fills
  only cells active from D or earlier, so the grid of a day depends on requests up to that day alone and
  a backfill builds the same rows as the daily runs. Rebuilt in full on every run (it is tiny).
-#}

with

requests as (

    select hex_id, requested_at from {{ ref('stg_raw__ride_requests') }}
    where hex_id is not null

),

cell_days as (

    select
        hex_id,
        cast(requested_at as date) as request_day,
        min(requested_at) as first_at,
        max(requested_at) as last_at,
        count(*) as day_requests

    from requests
    group by hex_id, request_day

),

running as (

    select
        *,
        sum(day_requests) over (partition by hex_id order by request_day) as requests_to_date

    from cell_days

),

cells as (

    select
        hex_id,
        min(first_at) as first_seen_at,
        max(last_at) as last_seen_at,
        cast(sum(day_requests) as bigint) as total_requests,
        min(request_day) filter (
            where requests_to_date >= {{ var('min_cell_requests') }}
        ) as active_from

    from running
    group by hex_id

),

active as (

    select * from cells
    where active_from is not null

)

select * from active
