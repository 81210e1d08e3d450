{#-
  Incremental merges prune the target: a model that sets `merge_window_column` (its date partition column) gets
  the predicate `DBT_INTERNAL_DEST.<column> >= <incremental_start_date(column)>`, a literal, so Delta reads and
  rewrites only the partitions the run can touch instead of joining the new rows against the whole table. Such a
  model selects only rows from that date on (each one filters its inputs on `incremental_start_date`), so target
  rows older than it can never match, and the result is the same merge.
-#}
{% macro spark__get_merge_sql(target, source, unique_key, dest_columns, incremental_predicates) %}
    {%- set predicates = [] if incremental_predicates is none else [] + incremental_predicates -%}
    {%- set column = config.get('merge_window_column') -%}
    {%- if column -%}
        {%- do predicates.append('DBT_INTERNAL_DEST.' ~ column ~ ' >= ' ~ incremental_start_date(column)) -%}
    {%- endif -%}
    {{ dbt.spark__get_merge_sql(target, source, unique_key, dest_columns, predicates) }}
{% endmacro %}
