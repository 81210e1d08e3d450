{#-
  Data tests check what a run can change. In an incremental run (darkroom sets var `test_window_days`, never for a
  full refresh or a first build), a test on a model listed in var `tested_window_columns` reads only its rows from
  `test_window_days` days before as_of's day on: incremental models merge only those days, and the event staging
  views only gain rows there (bronze merges by key through the contracts). Other models are tested whole.
-#}
{% macro spark__get_where_subquery(relation) -%}
    {%- set clauses = [] -%}
    {%- set where = config.get('where', '') -%}
    {%- if where -%}
        {%- do clauses.append(where) -%}
    {%- endif -%}
    {%- set column = var('tested_window_columns', {}).get(relation.identifier) -%}
    {%- set days = var('test_window_days', none) -%}
    {%- if column and days is not none -%}
        {%- do clauses.append(column ~ ' >= date_sub(' ~ as_of_date() ~ ', ' ~ days ~ ')') -%}
    {%- endif -%}
    {%- if clauses -%}
        {%- do return('(select * from ' ~ relation ~ ' where ' ~ clauses | join(' and ') ~ ') dbt_subquery') -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}
