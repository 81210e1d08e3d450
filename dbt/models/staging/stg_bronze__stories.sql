with

source as (

    select * from {{ source('bronze', 'stories') }}

),

renamed as (

    select
        cast(story_id as bigint) as story_id,
        cast(author_id as bigint) as author_id,
        cast(created_at as timestamp) as created_at
    from source

)

select * from renamed
