{{
    config(
        materialized='table',
    )
}}

{#- The story tray at as_of: who has live stories among the authors a viewer follows, and how close they are. -#}

with

follows as (

    select * from {{ ref('stg_bronze__follows') }}
    where followed_at < {{ as_of() }}

),

live_stories as (

    select * from {{ ref('stg_bronze__stories') }}
    where
        created_at > {{ as_of() }} - interval 24 hours
        and created_at < {{ as_of() }}

),

story_views as (

    select * from {{ ref('stg_bronze__story_views') }}
    -- only views of live stories matter, and a story is viewed after it is posted: the last 24 hours
    where
        viewed_at < {{ as_of() }}
        and viewed_at > {{ as_of() }} - interval 24 hours
        and view_date >= to_date({{ as_of() }} - interval 24 hours)

),

interactions as (

    select * from {{ ref('int_interactions_aggregated_daily') }}
    where interaction_date between {{ window_start_date(7) }} and {{ as_of_date() }}

),

affinity as (

    select * from {{ ref('fct_viewer_author_affinity') }}
    where affinity_date <= {{ as_of_date() }}

),

followed_live_stories as (

    select
        follows.follower_id as viewer_id,
        live_stories.author_id,
        live_stories.story_id,
        live_stories.created_at,
        story_views.story_id is null as is_unseen
    from follows
    inner join live_stories
        on follows.followee_id = live_stories.author_id
    left join story_views
        on
            live_stories.story_id = story_views.story_id
            and follows.follower_id = story_views.viewer_id
    where follows.follower_id != follows.followee_id

),

rings as (

    select
        viewer_id,
        author_id,
        count(*) as live_stories,
        count_if(is_unseen) as unseen_stories,
        max(created_at) as latest_story_at
    from followed_live_stories
    group by viewer_id, author_id

),

engagement_7d as (

    select
        viewer_id,
        author_id,
        sum(dms) as dms_7d,
        sum(profile_visits) as profile_visits_7d,
        sum(likes + comments) as likes_comments_7d,
        sum(story_views) as story_views_7d
    from interactions
    group by viewer_id, author_id

),

-- The pair's latest affinity (an aggregate, not a window over the whole table), decayed on from its feature_ts
-- to as_of.
latest_affinity as (

    select
        viewer_id,
        author_id,
        -- (viewer, author, affinity_date) is the key: one row per date, so both come from the same row
        max_by(feature_ts, affinity_date) as feature_ts,
        max_by(affinity_score, affinity_date) as affinity_score
    from affinity
    group by viewer_id, author_id

),

decayed_affinity as (

    select
        viewer_id,
        author_id,
        affinity_score
        * pow(
            0.5,
            (unix_micros({{ as_of() }}) - unix_micros(feature_ts)) / 86400000000
            / {{ var('affinity_half_life_days') }}
        ) as affinity_score
    from latest_affinity

),

final as (

    select
        rings.viewer_id,
        rings.author_id,
        rings.live_stories,
        rings.unseen_stories,
        rings.latest_story_at,
        rings.unseen_stories > 0 as has_unseen,
        coalesce(engagement_7d.dms_7d, 0) as dms_7d,
        coalesce(engagement_7d.profile_visits_7d, 0) as profile_visits_7d,
        coalesce(engagement_7d.likes_comments_7d, 0) as likes_comments_7d,
        coalesce(engagement_7d.story_views_7d, 0) as story_views_7d,
        coalesce(decayed_affinity.affinity_score, 0.0) as affinity_score,
        {{ as_of() }} as as_of
    from rings
    left join engagement_7d
        on
            rings.viewer_id = engagement_7d.viewer_id
            and rings.author_id = engagement_7d.author_id
    left join decayed_affinity
        on
            rings.viewer_id = decayed_affinity.viewer_id
            and rings.author_id = decayed_affinity.author_id

)

select * from final
