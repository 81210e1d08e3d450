with

users as (

    select * from {{ ref('stg_bronze__users') }}
    where created_at < {{ as_of() }}

),

follows as (

    select * from {{ ref('stg_bronze__follows') }}
    where followed_at < {{ as_of() }}

),

posts as (

    select * from {{ ref('stg_bronze__posts') }}
    where
        created_at < {{ as_of() }}
        and cast(created_at as date) >= {{ window_start_date(var('active_window_days')) }}

),

user_activity as (

    select * from {{ ref('int_user_activity_windowed') }}

),

followers_per_author as (

    select
        follows.followee_id as author_id,
        count(*) as followers,
        count_if(coalesce(user_activity.is_active, false)) as active_followers,
        sum(coalesce(user_activity.feed_reads_per_day, 0)) as follower_feed_reads_per_day
    from follows
    left join user_activity
        on follows.follower_id = user_activity.user_id
    group by follows.followee_id

),

posts_per_author as (

    select
        author_id,
        count(*) as posts_7d
    from posts
    group by author_id

),

final as (

    select
        users.user_id as author_id,
        cast(coalesce(followers_per_author.followers, 0) as bigint) as followers,
        cast(coalesce(followers_per_author.active_followers, 0) as bigint) as active_followers,
        cast(
            case
                when coalesce(followers_per_author.followers, 0) = 0 then 0
                else followers_per_author.active_followers / followers_per_author.followers
            end as double
        ) as active_follower_fraction,
        cast(coalesce(posts_per_author.posts_7d, 0) as bigint) as posts_7d,
        cast(coalesce(posts_per_author.posts_7d, 0) as double)
        / {{ var('active_window_days') }} as posts_per_day,
        cast(coalesce(followers_per_author.follower_feed_reads_per_day, 0) as double) as follower_feed_reads_per_day,
        {{ as_of() }} as as_of
    from users
    left join followers_per_author
        on users.user_id = followers_per_author.author_id
    left join posts_per_author
        on users.user_id = posts_per_author.author_id

)

select * from final
