{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['viewer_id', 'author_id'],
    )
}}

{#-
  The per-pair affinity state: each viewer x author pair's latest row of fct_viewer_author_affinity, so a reader of
  "affinity now" (the story ring) reads one row per pair instead of aggregating every interaction day of the mart.
  An incremental run folds the affinity rows it can have changed (from incremental_start_date on) into the pairs'
  stored rows and keeps the later one; a full refresh takes the latest row of every pair. A pair's row only moves
  forward in time: a backfill of an earlier day leaves later rows in place (readers check affinity_date; see
  affinity_source).
-#}

with

affinity as (

    select * from {{ ref('fct_viewer_author_affinity') }}
    where affinity_date <= {{ as_of_date() }}
    {% if is_incremental() %}
        and affinity_date >= {{ incremental_start_date('affinity_date') }}
    {% endif %}

),

candidates as (

    select
        viewer_id,
        author_id,
        affinity_date,
        feature_ts,
        decayed_likes,
        decayed_comments,
        decayed_dms,
        decayed_profile_visits,
        affinity_score,
        1 as precedence
    from affinity
    {% if is_incremental() %}
        union all
        select
            stored.viewer_id,
            stored.author_id,
            stored.affinity_date,
            stored.feature_ts,
            stored.decayed_likes,
            stored.decayed_comments,
            stored.decayed_dms,
            stored.decayed_profile_visits,
            stored.affinity_score,
            -- a restated day (late rows) replaces the stored row of the same day
            0 as precedence
        from {{ this }} as stored
        left semi join affinity
            on
                stored.viewer_id = affinity.viewer_id
                and stored.author_id = affinity.author_id
    {% endif %}

),

latest as (

    select
        viewer_id,
        author_id,
        max_by(
            struct(
                affinity_date,
                feature_ts,
                decayed_likes,
                decayed_comments,
                decayed_dms,
                decayed_profile_visits,
                affinity_score
            ),
            struct(affinity_date, precedence)
        ) as latest_row
    from candidates
    group by viewer_id, author_id

),

final as (

    select
        latest.viewer_id,
        latest.author_id,
        latest.latest_row.affinity_date,
        latest.latest_row.feature_ts,
        latest.latest_row.decayed_likes,
        latest.latest_row.decayed_comments,
        latest.latest_row.decayed_dms,
        latest.latest_row.decayed_profile_visits,
        latest.latest_row.affinity_score
    from latest

)

select * from final
