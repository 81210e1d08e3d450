{#-
  Incremental merges prune the target: a model that sets `merge_window_column` (its date partition column) gets
  the predicate `DBT_INTERNAL_DEST.<column> >= date'<lowest date in this run's new rows>'`, so Delta reads and
  rewrites only the partitions the run can touch instead of joining the new rows against the whole table. Target
  rows older than every new row can never match, so the result is the same merge.
-#}
{% macro spark__get_merge_sql(target, source, unique_key, dest_columns, incremental_predicates) %}
    {%- set predicates = [] if incremental_predicates is none else [] + incremental_predicates -%}
    {%- set column = config.get('merge_window_column') -%}
    {%- if column and execute -%}
        {%- set lowest = run_query('select cast(min(' ~ column ~ ') as string) from ' ~ source).columns[0].values()[0] -%}
        {%- if lowest is not none -%}
            {%- do predicates.append('DBT_INTERNAL_DEST.' ~ column ~ " >= date'" ~ lowest ~ "'") -%}
        {%- endif -%}
    {%- endif -%}
    {{ dbt.spark__get_merge_sql(target, source, unique_key, dest_columns, predicates) }}
{% endmacro %}
