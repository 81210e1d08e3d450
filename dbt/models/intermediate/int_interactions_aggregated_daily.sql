{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['viewer_id', 'author_id', 'interaction_date'],
        partition_by=['interaction_date'],
        merge_window_column='interaction_date',
    )
}}

with

impressions as (

    select * from {{ ref('stg_bronze__impressions') }}
    where impressed_at < {{ as_of() }}
    {% if is_incremental() %}
        and impression_date >= {{ incremental_start_date('interaction_date') }}
    {% endif %}

),

dm_events as (

    select * from {{ ref('stg_bronze__dm_events') }}
    where sent_at < {{ as_of() }}
    {% if is_incremental() %}
        and sent_date >= {{ incremental_start_date('interaction_date') }}
    {% endif %}

),

profile_visits as (

    select * from {{ ref('stg_bronze__profile_visits') }}
    where visited_at < {{ as_of() }}
    {% if is_incremental() %}
        and visit_date >= {{ incremental_start_date('interaction_date') }}
    {% endif %}

),

story_views as (

    select * from {{ ref('stg_bronze__story_views') }}
    where viewed_at < {{ as_of() }}
    {% if is_incremental() %}
        and view_date >= {{ incremental_start_date('interaction_date') }}
    {% endif %}

),

stories as (

    select * from {{ ref('stg_bronze__stories') }}

),

-- One row per interaction event, viewer -> author, with a 0/1 per kind.
impression_events as (

    select
        viewer_id,
        author_id,
        impression_date as interaction_date,
        cast(coalesce(is_liked, false) as bigint) as likes,
        cast(coalesce(is_commented, false) as bigint) as comments,
        cast(coalesce(is_saved, false) as bigint) as saves,
        cast(coalesce(is_shared, false) as bigint) as shares,  -- noqa: RF04
        0 as dms,
        0 as profile_visits,
        0 as story_views
    from impressions

),

dm_sent_events as (

    select
        sender_id as viewer_id,
        recipient_id as author_id,
        sent_date as interaction_date,
        0 as likes,
        0 as comments,
        0 as saves,
        0 as shares,  -- noqa: RF04
        1 as dms,
        0 as profile_visits,
        0 as story_views
    from dm_events

),

profile_visit_events as (

    select
        visitor_id as viewer_id,
        profile_id as author_id,
        visit_date as interaction_date,
        0 as likes,
        0 as comments,
        0 as saves,
        0 as shares,  -- noqa: RF04
        0 as dms,
        1 as profile_visits,
        0 as story_views
    from profile_visits

),

story_view_events as (

    select
        story_views.viewer_id,
        stories.author_id,
        story_views.view_date as interaction_date,
        0 as likes,
        0 as comments,
        0 as saves,
        0 as shares,  -- noqa: RF04
        0 as dms,
        0 as profile_visits,
        1 as story_views
    from story_views
    inner join stories
        on story_views.story_id = stories.story_id

),

interaction_events as (

    select * from impression_events
    union all
    select * from dm_sent_events
    union all
    select * from profile_visit_events
    union all
    select * from story_view_events

),

aggregated as (

    select
        viewer_id,
        author_id,
        interaction_date,
        cast(sum(likes) as bigint) as likes,
        cast(sum(comments) as bigint) as comments,
        cast(sum(saves) as bigint) as saves,
        cast(sum(shares) as bigint) as shares,  -- noqa: RF04
        cast(sum(dms) as bigint) as dms,
        cast(sum(profile_visits) as bigint) as profile_visits,
        cast(sum(story_views) as bigint) as story_views
    from interaction_events
    where viewer_id != author_id
    group by viewer_id, author_id, interaction_date

),

final as (

    select * from aggregated
    where likes + comments + saves + shares + dms + profile_visits + story_views > 0

)

select * from final
