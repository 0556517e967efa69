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
  Driver supply per (hex_id, service_type, bucket_start): distinct drivers whose last ping in the bucket
  left them idle / busy (en_route or on_trip) in the cell. Zero-filled over the grid, but only on UTC
  days that have at least one driver ping: a city (or a day) without a ping feed gets no rows, so the
  features see NULL supply rather than an invented zero. Always filtered on the window.
-#}

with

spine as (

    select * from {{ ref('int_cell_buckets_spined') }}

),

driver_states as (

    select * from {{ ref('int_driver_states_bucketed') }}

),

ping_days as (

    select distinct cast(bucket_start as date) as ping_day from driver_states

),

cell_supply as (

    select
        hex_id,
        service_type,
        bucket_start,
        count(distinct driver_id) filter (where status = 'idle') as idle_drivers,
        count(distinct driver_id) filter (where status in ('en_route', 'on_trip')) as busy_drivers

    from driver_states
    group by hex_id, service_type, bucket_start

),

joined as (

    select
        spine.hex_id,
        spine.service_type,
        spine.bucket_start,
        cast(coalesce(cell_supply.idle_drivers, 0) as integer) as idle_drivers,
        cast(coalesce(cell_supply.busy_drivers, 0) as integer) as busy_drivers

    from spine
    inner join ping_days
        on ping_days.ping_day = cast(spine.bucket_start as date)
    left join cell_supply
        on cell_supply.hex_id = spine.hex_id
        and cell_supply.service_type = spine.service_type
        and cell_supply.bucket_start = spine.bucket_start

)

select * from joined
