with

source as (

    select * from {{ source('bronze', 'follows') }}

),

renamed as (

    select
        cast(follower_id as bigint) as follower_id,
        cast(followee_id as bigint) as followee_id,
        cast(created_at as timestamp) as followed_at
    from source

)

select * from renamed
