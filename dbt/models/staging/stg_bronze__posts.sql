with

source as (

    select * from {{ source('bronze', 'posts') }}

),

renamed as (

    select
        cast(post_id as bigint) as post_id,
        cast(author_id as bigint) as author_id,
        cast(created_at as timestamp) as created_at,
        cast(caption as string) as caption,
        cast(media_count as int) as media_count
    from source

)

select * from renamed
