with

source as (

    select * from {{ source('bronze', 'users') }}

),

renamed as (

    select
        cast(user_id as bigint) as user_id,
        cast(username as string) as username,
        cast(region as string) as region,
        cast(is_private as boolean) as is_private,
        cast(created_at as timestamp) as created_at
    from source

)

select * from renamed
