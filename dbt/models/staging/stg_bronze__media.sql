with

source as (

    select * from {{ source('bronze', 'media') }}

),

renamed as (

    select
        cast(media_id as bigint) as media_id,
        cast(post_id as bigint) as post_id,
        cast(bytes as bigint) as size_bytes,
        cast(width as int) as width,
        cast(height as int) as height,
        cast(created_at as timestamp) as created_at,
        cast(content_seed as bigint) as content_seed
    from source

)

select * from renamed
