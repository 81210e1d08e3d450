{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['viewer_id', 'author_id', 'affinity_date'],
        partition_by=['affinity_date'],
        merge_window_column='affinity_date',
    )
}}

{#-
  affinity_score = 1 * decayed_likes + 2 * decayed_comments + 3 * decayed_dms + 1 * decayed_profile_visits:
  private signals (a DM, then a comment) say more about a viewer's interest in an author than a like or a visit.
  Every count decays with a half-life of `affinity_half_life_days` over the pair's interaction days of the last
  `window_days` days (the affinity day included).
-#}

{%- set affinity_weights = {'likes': 1, 'comments': 2, 'dms': 3, 'profile_visits': 1} %}
{%- set window_days = 90 %}
{%- set fixed_point = 1000000000 %}

with

interactions as (

    select * from {{ ref('int_interactions_aggregated_daily') }}
    where interaction_date <= {{ as_of_date() }}

),

affinity_days as (

    select * from interactions
    {% if is_incremental() %}
        where interaction_date >= {{ incremental_start_date('affinity_date') }}
    {% endif %}

),

history as (

    select * from interactions
    {% if is_incremental() %}
        where interaction_date >= date_sub({{ incremental_start_date('affinity_date') }}, {{ window_days }} - 1)
    {% endif %}

),

decay_factors as (

    select
        affinity_days.viewer_id,
        affinity_days.author_id,
        affinity_days.interaction_date as affinity_date,
        affinity_days.likes,
        affinity_days.comments,
        affinity_days.dms,
        affinity_days.profile_visits,
        history.likes as past_likes,
        history.comments as past_comments,
        history.dms as past_dms,
        history.profile_visits as past_profile_visits,
        pow(
            0.5,
            datediff(affinity_days.interaction_date, history.interaction_date) / {{ var('affinity_half_life_days') }}
        ) as decay
    from affinity_days
    inner join history
        on
            affinity_days.viewer_id = history.viewer_id
            and affinity_days.author_id = history.author_id
            and affinity_days.interaction_date >= history.interaction_date
            and date_sub(affinity_days.interaction_date, {{ window_days }}) < history.interaction_date

),

-- Summed as integers of 1e-9 units: a sum of doubles depends on the order rows arrive in, and re-runs must give the
-- same rows; a bigint sum is exact in any order and far cheaper than decimal(38, x) arithmetic.
decayed as (

    select
        viewer_id,
        author_id,
        affinity_date,
        likes,
        comments,
        dms,
        profile_visits,
        sum(cast(round(past_likes * decay * {{ fixed_point }}) as bigint))
        / {{ fixed_point }} as decayed_likes,
        sum(cast(round(past_comments * decay * {{ fixed_point }}) as bigint))
        / {{ fixed_point }} as decayed_comments,
        sum(cast(round(past_dms * decay * {{ fixed_point }}) as bigint))
        / {{ fixed_point }} as decayed_dms,
        sum(cast(round(past_profile_visits * decay * {{ fixed_point }}) as bigint))
        / {{ fixed_point }} as decayed_profile_visits
    from decay_factors
    group by viewer_id, author_id, affinity_date, likes, comments, dms, profile_visits

),

final as (

    select
        viewer_id,
        author_id,
        affinity_date,
        least(cast(date_add(affinity_date, 1) as timestamp), {{ as_of() }}) as feature_ts,
        likes,
        comments,
        dms,
        profile_visits,
        decayed_likes,
        decayed_comments,
        decayed_dms,
        decayed_profile_visits,
        {{ affinity_weights.likes }} * decayed_likes
        + {{ affinity_weights.comments }} * decayed_comments
        + {{ affinity_weights.dms }} * decayed_dms
        + {{ affinity_weights.profile_visits }} * decayed_profile_visits as affinity_score
    from decayed

)

select * from final
