{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['user_id', 'feature_date'],
        partition_by=['feature_date'],
        merge_window_column='feature_date',
    )
}}

{#-
  A dense user x day grid that starts 6 days before the first emitted day, so every 7-day window is complete. The
  cumulative follower and followee counts start from a base: in an incremental run, the table's own row of the day
  before the first emitted day (so a day's run reads that day's follows, not the whole graph); in a full refresh
  (or when that day has no rows yet), every follow before the grid folded into its first day. Both give the same
  rows for the same as_of.
-#}

with

users as (

    select * from {{ ref('stg_bronze__users') }}

),

follows as (

    select * from {{ ref('stg_bronze__follows') }}
    where followed_at < {{ as_of() }}

),

posts as (

    select * from {{ ref('stg_bronze__posts') }}
    where created_at < {{ as_of() }}

),

impressions as (

    select * from {{ ref('stg_bronze__impressions') }}
    where impressed_at < {{ as_of() }}
    {% if is_incremental() %}
        and impression_date >= date_sub({{ incremental_start_date('feature_date') }}, 6)
    {% endif %}

),

feed_reads_daily as (

    select * from {{ ref('int_feed_reads_aggregated_daily') }}
    where read_date <= {{ as_of_date() }}

),

emitted_range as (

    select
        {% if is_incremental() %}
            greatest(min(read_date), {{ incremental_start_date('feature_date') }}) as first_date,
        {% else %}
            min(read_date) as first_date,
        {% endif %}
        {{ as_of_date() }} as last_date
    from feed_reads_daily

),

grid_range as (

    select
        first_date,
        last_date,
        date_sub(first_date, 6) as grid_start_date
    from emitted_range

),

-- The grid's own days of reads: an incremental run reads ten days of the table, not its whole history.
feed_reads_in_grid as (

    select feed_reads_daily.*
    from feed_reads_daily
    {% if is_incremental() %}
        where feed_reads_daily.read_date >= date_sub({{ incremental_start_date('feature_date') }}, 6)
    {% endif %}

),

calendar as (

    select
        first_date,
        explode(sequence(grid_start_date, last_date)) as feature_date
    from grid_range

),

{% if is_incremental() %}
base_counts as (

    select
        this_table.user_id,
        this_table.feature_date,
        this_table.followers,
        this_table.followees
    from {{ this }} as this_table
    inner join grid_range
        on this_table.feature_date = date_sub(grid_range.first_date, 1)

),

has_base as (

    select count(*) > 0 as has_base from base_counts

),
{% endif %}

follows_bucketed as (

    select
        follows.follower_id,
        follows.followee_id,
        greatest(to_date(follows.followed_at), grid_range.grid_start_date) as feature_date
    from follows
    cross join grid_range
    {% if is_incremental() %}
        cross join has_base
        where not has_base.has_base or follows.followed_at >= cast(grid_range.first_date as timestamp)
    {% endif %}

),

follow_edges as (

    select
        followee_id as user_id,
        feature_date,
        1 as new_followers,
        0 as new_followees
    from follows_bucketed
    union all
    select
        follower_id as user_id,
        feature_date,
        0 as new_followers,
        1 as new_followees
    from follows_bucketed
    {% if is_incremental() %}
        union all
        select
            user_id,
            feature_date,
            followers as new_followers,
            followees as new_followees
        from base_counts
    {% endif %}

),

follows_daily as (

    select
        user_id,
        feature_date,
        sum(new_followers) as new_followers,
        sum(new_followees) as new_followees
    from follow_edges
    group by user_id, feature_date

),

posts_daily as (

    select
        author_id as user_id,
        to_date(created_at) as feature_date,
        count(*) as posts
    from posts
    group by author_id, to_date(created_at)

),

impressions_daily as (

    select
        viewer_id as user_id,
        impression_date as feature_date,
        count(*) as impressions,
        count_if(is_liked) as likes
    from impressions
    group by viewer_id, impression_date

),

user_days as (

    select
        users.user_id,
        users.region,
        users.is_private,
        users.created_at,
        calendar.feature_date,
        calendar.first_date,
        least(cast(date_add(calendar.feature_date, 1) as timestamp), {{ as_of() }}) as feature_ts
    from users
    cross join calendar

),

user_day_activity as (

    select
        user_days.*,
        coalesce(follows_daily.new_followers, 0) as new_followers,
        coalesce(follows_daily.new_followees, 0) as new_followees,
        coalesce(posts_daily.posts, 0) as posts,
        coalesce(feed_reads_in_grid.feed_reads, 0) as feed_reads,
        coalesce(impressions_daily.impressions, 0) as impressions,
        coalesce(impressions_daily.likes, 0) as likes
    from user_days
    left join follows_daily
        on
            user_days.user_id = follows_daily.user_id
            and user_days.feature_date = follows_daily.feature_date
    left join posts_daily
        on
            user_days.user_id = posts_daily.user_id
            and user_days.feature_date = posts_daily.feature_date
    left join feed_reads_in_grid
        on
            user_days.user_id = feed_reads_in_grid.user_id
            and user_days.feature_date = feed_reads_in_grid.read_date
    left join impressions_daily
        on
            user_days.user_id = impressions_daily.user_id
            and user_days.feature_date = impressions_daily.feature_date

),

windowed as (

    select
        *,
        sum(new_followers) over cumulative as followers,
        sum(new_followees) over cumulative as followees,
        sum(posts) over last_7_days as posts_7d,
        sum(feed_reads) over last_7_days as feed_reads_7d,
        sum(impressions) over last_7_days as impressions_7d,
        sum(likes) over last_7_days as likes_7d
    from user_day_activity
    window
        cumulative as (partition by user_id order by feature_date rows between unbounded preceding and current row),
        last_7_days as (partition by user_id order by feature_date rows between 6 preceding and current row)

),

final as (

    select
        user_id,
        feature_date,
        feature_ts,
        region,
        is_private,
        cast(unix_micros(feature_ts) - unix_micros(created_at) as double) / 86400000000 as account_age_days,
        cast(followers as bigint) as followers,
        cast(followees as bigint) as followees,
        cast(posts_7d as bigint) as posts_7d,
        cast(feed_reads_7d as bigint) as feed_reads_7d,
        cast(impressions_7d as bigint) as impressions_7d,
        cast(likes_7d as bigint) as likes_7d,
        coalesce(cast(likes_7d as double) / nullif(impressions_7d, 0), 0.0) as like_rate_7d
    from windowed
    where
        feature_date >= first_date
        and created_at < feature_ts

)

select * from final
