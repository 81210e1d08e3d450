with

user_activity as (

    select * from {{ ref('int_user_activity_windowed') }}

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

posting_authors as (

    select distinct author_id
    from posts

),

followees_per_user as (

    select
        follows.follower_id as user_id,
        count(*) as followees,
        count_if(coalesce(user_activity.is_active, false)) as active_followees,
        count(posting_authors.author_id) as posting_followees
    from follows
    left join user_activity
        on follows.followee_id = user_activity.user_id
    left join posting_authors
        on follows.followee_id = posting_authors.author_id
    group by follows.follower_id

),

final as (

    select
        user_activity.user_id,
        user_activity.feed_reads_1d,
        user_activity.feed_reads_7d,
        user_activity.feed_reads_per_day,
        user_activity.last_read_at,
        user_activity.is_active,
        cast(coalesce(followees_per_user.followees, 0) as bigint) as followees,
        cast(coalesce(followees_per_user.active_followees, 0) as bigint) as active_followees,
        cast(coalesce(followees_per_user.posting_followees, 0) as bigint) as posting_followees,
        {{ as_of() }} as as_of
    from user_activity
    left join followees_per_user
        on user_activity.user_id = followees_per_user.user_id

)

select * from final
