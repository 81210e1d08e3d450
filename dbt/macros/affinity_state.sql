{#-
  Where a reader finds each viewer x author pair's latest affinity as of as_of: fct_viewer_author_affinity_latest
  (one row per pair) when none of its rows is later than as_of's day, which holds for every run that moves forward
  in time; otherwise (a backfill of an earlier day, or no state table yet) the mart fct_viewer_author_affinity, whose
  rows the reader aggregates. Both give the same latest row per pair. Parsing and unit tests get the state (a unit
  test gives its rows); a model calling this declares `-- depends_on: {{ ref('fct_viewer_author_affinity') }}`.
-#}
{% macro affinity_source() -%}
    {%- set state = ref('fct_viewer_author_affinity_latest') -%}
    {%- if execute and model.resource_type == 'model' -%}
        {%- set relation = load_relation(state) -%}
        {%- if relation is none -%}
            {%- do return(ref('fct_viewer_author_affinity')) -%}
        {%- endif -%}
        {%- set query -%}
            select cast(coalesce(max(affinity_date) <= {{ as_of_date() }}, true) as string) from {{ relation }}
        {%- endset -%}
        {%- if run_query(query).columns[0].values()[0] != 'true' -%}
            {%- do return(ref('fct_viewer_author_affinity')) -%}
        {%- endif -%}
    {%- endif -%}
    {%- do return(state) -%}
{%- endmacro %}
