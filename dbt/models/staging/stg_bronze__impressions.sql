with

source as (

    select * from {{ source('bronze', 'impressions') }}

),

renamed as (

    select
        cast(viewer_id as bigint) as viewer_id,
        cast(post_id as bigint) as post_id,
        cast(author_id as bigint) as author_id,
        cast(ts as timestamp) as impressed_at,
        cast(dt as date) as impression_date,
        cast(surface as string) as surface,
        cast(position as int) as position,  -- noqa: RF04
        cast(liked as boolean) as is_liked,
        cast(commented as boolean) as is_commented,
        cast(saved as boolean) as is_saved,
        cast(shared as boolean) as is_shared,
        cast(followed as boolean) as is_followed,
        cast(hidden as boolean) as is_hidden,
        cast(dwell_ms as int) as dwell_ms
    from source

)

select * from renamed
