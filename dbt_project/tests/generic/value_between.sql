{#-
  Fails for every non-null value of the column outside [min_value, max_value] (either bound may be
  omitted). NULLs pass: combine with not_null where a value is required.
  window_column: as in unique_combination, restricts the check to the run's window.
-#}
{% test value_between(model, column_name, min_value=none, max_value=none, window_column=none) %}
    select {{ column_name }} as offending_value
    from {{ model }}
    where {{ column_name }} is not null
      {% if window_column %}and {{ in_window(window_column) }}{% endif %}
      and (
        false
        {% if min_value is not none %}or {{ column_name }} < {{ min_value }}{% endif %}
        {% if max_value is not none %}or {{ column_name }} > {{ max_value }}{% endif %}
      )
{% endtest %}
