{#- Time windows end at the run's as_of (the end of its data interval), never at the wall clock. -#}

{% macro as_of() -%}
    {%- set value = var('as_of', none) -%}
    {%- if value is none -%}
        {{ exceptions.raise_compiler_error("var 'as_of' is required: run dbt through `darkroom dbt`, or pass --vars '{as_of: \"YYYY-MM-DD HH:MM:SS\"}'") }}
    {%- endif -%}
    timestamp'{{ value }}'
{%- endmacro %}

{#- The last (possibly partial) day of the interval: as_of at midnight means the day before. -#}
{% macro as_of_date() -%}
    to_date({{ as_of() }} - interval 1 microsecond)
{%- endmacro %}

{#- The first day of an n-day window that ends with as_of_date(). -#}
{% macro window_start_date(days) -%}
    date_sub({{ as_of_date() }}, {{ days }} - 1)
{%- endmacro %}

{#-
  Incremental models re-state every day from `lookback_days` before their high-water mark (or before as_of, when
  a backfill runs an earlier interval), so late rows are merged in and a re-run gives the same rows.
-#}
{% macro incremental_start_date(date_column) -%}
    {%- set expression -%}
        date_sub(
            least(coalesce((select max({{ date_column }}) from {{ this }}), {{ as_of_date() }}), {{ as_of_date() }}),
            {{ var('lookback_days') }}
        )
    {%- endset -%}
    {%- if execute and model.resource_type == 'model' -%}
        {#- A literal lets Spark prune the partitions of sources and target; a scalar subquery would not. -#}
        {%- set value = run_query('select cast(' ~ expression ~ ' as string)').columns[0].values()[0] -%}
        date'{{ value }}'
    {%- else -%}
        {#- Parsing, and unit tests (whose `this` is their fixture): the expression itself. -#}
        {{ expression }}
    {%- endif -%}
{%- endmacro %}
