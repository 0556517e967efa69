{#-
  Active cells: H3 cells with at least var('min_cell_requests') ride requests over all history.
  Rebuilt in full on every run (it is tiny), so a cell appears the day its history reaches the threshold.
-#}

with

requests as (

    select hex_id, requested_at from {{ ref('stg_raw__ride_requests') }}
    where hex_id is not null

),

cells as (

    select
        hex_id,
        min(requested_at) as first_seen_at,
        max(requested_at) as last_seen_at,
        count(*) as total_requests

    from requests
    group by hex_id

),

active as (

    select * from cells
    where total_requests >= {{ var('min_cell_requests') }}

)

select * from active
