{#-
  The partition window [start, end): `start` inclusive, `end` exclusive.

  Both are parsed here once so every model agrees on them: ISO strings with or without a `T`, naive
  (meaning UTC) or with an offset (converted to UTC). They must fall on 15-minute boundaries, since a
  window that cut a bucket in two could not be rewritten exactly.
-#}

{#-
  Where the window comes from, first found wins:
  1. vars `start` / `end` (`dbt build --vars '{"start": ..., "end": ...}'`, unit-test overrides);
  2. the environment variables PULSE_DBT_WINDOW_START / PULSE_DBT_WINDOW_END, which Dagster sets for each
     run. They are read only while executing, never while parsing: the window changes on every run, and
     changed --vars (or a changed env_var seen at parse time) make dbt re-parse the whole project (~4 s),
     while an unchanged project reuses partial_parse.msgpack;
  3. "all data" (1970 .. 2100), clamped to the days that have ride requests (see int_cell_buckets_spined).
-#}
{% macro _window_var_text(name) %}
    {%- set defaults = {'start': '1970-01-01 00:00:00', 'end': '2100-01-01 00:00:00'} -%}
    {%- set given = var(name, none) -%}
    {%- if given is not none -%}
        {{ return(given | string) }}
    {%- endif -%}
    {%- if execute -%}
        {{ return(env_var('PULSE_DBT_WINDOW_' ~ (name | upper), defaults[name])) }}
    {%- endif -%}
    {{ return(defaults[name]) }}
{% endmacro %}

{% macro _parse_window_var(name) %}
    {%- set raw = _window_var_text(name) | trim -%}
    {%- set text = raw[:-1] ~ '+00:00' if raw.endswith('Z') else raw -%}
    {%- set dt = none -%}
    {%- if text | length == 10 -%}
        {%- set dt = modules.datetime.datetime.strptime(text, '%Y-%m-%d') -%}
    {%- else -%}
        {%- set dt = modules.datetime.datetime.fromisoformat(text) -%}
    {%- endif -%}
    {%- if dt.tzinfo is not none -%}
        {%- set dt = dt.astimezone(modules.pytz.utc).replace(tzinfo=none) -%}
    {%- endif -%}
    {%- if dt.minute % 15 != 0 or dt.second != 0 or dt.microsecond != 0 -%}
        {{ exceptions.raise_compiler_error(
            "var('" ~ name ~ "') = '" ~ raw ~ "' is not on a 15-minute bucket boundary") }}
    {%- endif -%}
    {{ return(dt) }}
{% endmacro %}

{% macro _window() %}
    {%- set start = _parse_window_var('start') -%}
    {%- set end = _parse_window_var('end') -%}
    {%- if start >= end -%}
        {{ exceptions.raise_compiler_error(
            "empty window: var('start') = " ~ start ~ " is not before var('end') = " ~ end) }}
    {%- endif -%}
    {{ return([start, end]) }}
{% endmacro %}

{#- SQL literal of the window start / end (TIMESTAMP, naive UTC). -#}
{% macro window_start() -%}
    timestamp '{{ _window()[0].strftime("%Y-%m-%d %H:%M:%S") }}'
{%- endmacro %}

{% macro window_end() -%}
    timestamp '{{ _window()[1].strftime("%Y-%m-%d %H:%M:%S") }}'
{%- endmacro %}

{#- Minutes from the window's start to its end. -#}
{% macro window_minutes() -%}
    {%- set window = _window() -%}
    {{ return(((window[1] - window[0]).total_seconds() // 60) | int) }}
{%- endmacro %}

{#- `column` in [start, end) -#}
{% macro in_window(column) -%}
    ({{ column }} >= {{ window_start() }} and {{ column }} < {{ window_end() }})
{%- endmacro %}

{#-
  var('service_types') as a list of ints. Accepts a list ([1, 2], what --vars JSON gives), one int,
  or a comma separated string ("1,2").
-#}
{% macro service_type_list() %}
    {%- set raw = var('service_types') -%}
    {%- if raw is string -%}
        {%- set items = raw.replace('[', '').replace(']', '').split(',') -%}
    {%- elif raw is number -%}
        {%- set items = [raw] -%}
    {%- else -%}
        {%- set items = raw -%}
    {%- endif -%}
    {%- set ints = [] -%}
    {%- for item in items -%}
        {%- set text = item | string | trim -%}
        {%- if text != '' -%}
            {%- if not text.lstrip('-').isdigit() -%}
                {{ exceptions.raise_compiler_error("var('service_types') holds a non-integer: " ~ text) }}
            {%- endif -%}
            {%- do ints.append(text | int) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if ints | length == 0 -%}
        {{ exceptions.raise_compiler_error("var('service_types') is empty") }}
    {%- endif -%}
    {{ return(ints | unique | list | sort) }}
{% endmacro %}

{#- SQL list of the service types, for `service_type in (...)`. -#}
{% macro service_types_sql() -%}
    {{ service_type_list() | join(', ') }}
{%- endmacro %}

{#-
  pre_hook of the incremental facts: remove every row of the window before the window is written, so
  a rerun replaces the window exactly, even when it now yields fewer rows (a cell no longer active, a
  day whose pings were withdrawn). delete+insert on the unique key alone would leave those behind.
-#}
{% macro delete_window(column='bucket_start') -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ in_window(column) }}
    {%- endif -%}
{%- endmacro %}

{#- Minute of day (0..1439) of the instant `timestamp_sql` (naive UTC) on the wall clock of `tz`. -#}
{% macro local_minute(timestamp_sql, tz) -%}
    (hour(timezone('{{ tz }}', timezone('UTC', {{ timestamp_sql }}))) * 60
        + minute(timezone('{{ tz }}', timezone('UTC', {{ timestamp_sql }}))))
{%- endmacro %}
