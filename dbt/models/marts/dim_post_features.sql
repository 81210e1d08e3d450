{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['post_id', 'feature_date'],
        partition_by=['feature_date'],
        merge_window_column='feature_date',
    )
}}

{#-
  A post has a row for each of its first `post_feature_horizon_days` days (days since its creation day), so the
  cumulative counts only ever need the impressions of posts created within the horizon before the first emitted day.
-#}

{%- set horizon_days = var('post_feature_horizon_days') %}

with

posts as (

    select * from {{ ref('stg_bronze__posts') }}
    where created_at < {{ as_of() }}
    {% if is_incremental() %}
        and to_date(created_at) >= date_sub({{ incremental_start_date('feature_date') }}, {{ horizon_days }} - 1)
    {% endif %}

),

impressions as (

    select * from {{ ref('stg_bronze__impressions') }}
    where impressed_at < {{ as_of() }}
    {% if is_incremental() %}
        and impression_date >= date_sub({{ incremental_start_date('feature_date') }}, {{ horizon_days }} - 1)
    {% endif %}

),

all_user_features as (

    select * from {{ ref('dim_user_features') }}

),

user_features as (

    select * from all_user_features
    {% if is_incremental() %}
        where feature_date >= {{ incremental_start_date('feature_date') }}
    {% endif %}

),

-- the partition column only
feature_start as (

    select min(feature_date) as first_feature_date
    from all_user_features

),

post_days as (

    select
        post_id,
        author_id,
        created_at,
        media_count,
        caption,
        explode(
            sequence(
                to_date(created_at),
                least(date_add(to_date(created_at), {{ horizon_days }} - 1), {{ as_of_date() }})
            )
        ) as feature_date
    from posts

),

engagement_daily as (

    select
        post_id,
        impression_date,
        count(*) as impressions,
        count_if(is_liked) as likes,
        count_if(is_commented) as comments,
        count_if(is_saved) as saves,
        count_if(is_shared) as shares,  -- noqa: RF04
        count_if(is_hidden) as hides
    from impressions
    group by post_id, impression_date

),

post_day_engagement as (

    select
        post_days.*,
        coalesce(engagement_daily.impressions, 0) as new_impressions,
        coalesce(engagement_daily.likes, 0) as new_likes,
        coalesce(engagement_daily.comments, 0) as new_comments,
        coalesce(engagement_daily.saves, 0) as new_saves,
        coalesce(engagement_daily.shares, 0) as new_shares,
        coalesce(engagement_daily.hides, 0) as new_hides
    from post_days
    left join engagement_daily
        on
            post_days.post_id = engagement_daily.post_id
            and post_days.feature_date = engagement_daily.impression_date

),

cumulative as (

    select
        *,
        least(cast(date_add(feature_date, 1) as timestamp), {{ as_of() }}) as feature_ts,
        sum(new_impressions) over since_creation as impressions,
        sum(new_likes) over since_creation as likes,
        sum(new_comments) over since_creation as comments,
        sum(new_saves) over since_creation as saves,
        sum(new_shares) over since_creation as shares,  -- noqa: RF04
        sum(new_hides) over since_creation as hides
    from post_day_engagement
    window since_creation as (
        partition by post_id order by feature_date rows between unbounded preceding and current row
    )

),

final as (

    select
        cumulative.post_id,
        cumulative.feature_date,
        cumulative.feature_ts,
        cumulative.author_id,
        cast(unix_micros(cumulative.feature_ts) - unix_micros(cumulative.created_at) as double)
        / 3600000000 as age_hours,
        cumulative.media_count,
        coalesce(length(cumulative.caption), 0) as caption_length,
        size(filter(split(coalesce(cumulative.caption, ''), '\\s+'), word -> word like '#_%')) as hashtag_count,
        cast(cumulative.impressions as bigint) as impressions,
        cast(cumulative.likes as bigint) as likes,
        cast(cumulative.comments as bigint) as comments,
        cast(cumulative.saves as bigint) as saves,
        cast(cumulative.shares as bigint) as shares,  -- noqa: RF04
        cast(cumulative.hides as bigint) as hides,
        coalesce(cast(cumulative.likes as double) / nullif(cumulative.impressions, 0), 0.0) as like_rate,
        user_features.followers as author_followers
    from cumulative
    -- Snapshots start with the user features' first day, so author_followers is always known.
    inner join feature_start
        on cumulative.feature_date >= feature_start.first_feature_date
    left join user_features
        on
            cumulative.author_id = user_features.user_id
            and cumulative.feature_date = user_features.feature_date
    {% if is_incremental() %}
        where cumulative.feature_date >= {{ incremental_start_date('feature_date') }}
    {% endif %}

)

select * from final
