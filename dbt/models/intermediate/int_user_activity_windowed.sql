with

users as (

    select * from {{ ref('stg_bronze__users') }}
    where created_at < {{ as_of() }}

),

feed_reads_daily as (

    select * from {{ ref('int_feed_reads_aggregated_daily') }}
    -- The daily table may hold later days (a backfill re-runs an earlier as_of); its as_of day is re-stated.
    where read_date <= {{ as_of_date() }}

),

reads_per_user as (

    select
        user_id,
        sum(
            case when read_date = {{ as_of_date() }} then feed_reads else 0 end
        ) as feed_reads_1d,
        sum(
            case
                when read_date >= {{ window_start_date(var('active_window_days')) }} then feed_reads
                else 0
            end
        ) as feed_reads_7d,
        max(last_read_at) as last_read_at
    from feed_reads_daily
    group by user_id

),

final as (

    select
        users.user_id,
        cast(coalesce(reads_per_user.feed_reads_1d, 0) as bigint) as feed_reads_1d,
        cast(coalesce(reads_per_user.feed_reads_7d, 0) as bigint) as feed_reads_7d,
        cast(coalesce(reads_per_user.feed_reads_7d, 0) as double)
        / {{ var('active_window_days') }} as feed_reads_per_day,
        reads_per_user.last_read_at,
        coalesce(reads_per_user.feed_reads_7d, 0) > 0 as is_active
    from users
    left join reads_per_user
        on users.user_id = reads_per_user.user_id

)

select * from final
