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
  Demand per (hex_id, service_type, bucket_start), zero-filled over the grid of the window.
  Always filtered on the window (first build included): each run writes exactly [start, end).

  Counts that depend on an optional source are NULL where that source says nothing:
  - completed / cancelled / unfulfilled: NULL in a bucket whose requests all lack a status (trip logs);
  - riders: NULL in a bucket whose requests all lack a rider_id;
  - quotes / converted_quotes: NULL on UTC days without any price quote (no quote feed).
-#}

with

spine as (

    select * from {{ ref('int_cell_buckets_spined') }}

),

requests as (

    select * from {{ ref('int_requests_bucketed') }}

),

quotes as (

    select * from {{ ref('int_quotes_bucketed') }}

),

quote_days as (

    select distinct cast(bucket_start as date) as quote_day from quotes

),

joined as (

    select
        spine.hex_id,
        spine.service_type,
        spine.bucket_start,
        cast(coalesce(requests.requests, 0) as integer) as requests,
        case
            when requests.requests > 0 and requests.requests_with_status = 0 then null
            else cast(coalesce(requests.completed, 0) as integer)
        end as completed,
        case
            when requests.requests > 0 and requests.requests_with_status = 0 then null
            else cast(coalesce(requests.cancelled, 0) as integer)
        end as cancelled,
        case
            when requests.requests > 0 and requests.requests_with_status = 0 then null
            else cast(coalesce(requests.unfulfilled, 0) as integer)
        end as unfulfilled,
        case
            when requests.requests > 0 and requests.requests_with_rider = 0 then null
            else cast(coalesce(requests.riders, 0) as integer)
        end as riders,
        case
            when quote_days.quote_day is not null then cast(coalesce(quotes.quotes, 0) as integer)
        end as quotes,
        case
            when quote_days.quote_day is not null then cast(coalesce(quotes.converted_quotes, 0) as integer)
        end as converted_quotes,
        quotes.converted_quotes / nullif(quotes.quotes, 0) as price_conversion,
        requests.accepted / nullif(requests.offered, 0) as acceptance_rate,
        requests.mean_quoted_surge

    from spine
    left join requests
        on requests.hex_id = spine.hex_id
        and requests.service_type = spine.service_type
        and requests.bucket_start = spine.bucket_start
    left join quotes
        on quotes.hex_id = spine.hex_id
        and quotes.service_type = spine.service_type
        and quotes.bucket_start = spine.bucket_start
    left join quote_days
        on quote_days.quote_day = cast(spine.bucket_start as date)

)

select * from joined
