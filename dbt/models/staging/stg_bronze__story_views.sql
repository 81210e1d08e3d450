with

source as (

    select * from {{ source('bronze', 'story_views') }}

),

renamed as (

    select
        cast(story_id as bigint) as story_id,
        cast(viewer_id as bigint) as viewer_id,
        cast(ts as timestamp) as viewed_at,
        cast(dt as date) as view_date
    from source

)

select * from renamed
