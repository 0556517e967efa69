{#-
  Fails for every combination of `combination_of_columns` that occurs more than once.
  window_column: when set, only rows whose window_column lies in the run's window [start, end) are
  checked, so a partition's check reads only that partition.
-#}
{% test unique_combination(model, combination_of_columns, window_column=none) %}
    {%- set columns = combination_of_columns | join(', ') -%}
    select {{ columns }}, count(*) as occurrences
    from {{ model }}
    {% if window_column %}where {{ in_window(window_column) }}{% endif %}
    group by {{ columns }}
    having count(*) > 1
{% endtest %}
