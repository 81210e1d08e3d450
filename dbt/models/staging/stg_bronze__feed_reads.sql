with

source as (

    select * from {{ source('bronze', 'feed_reads') }}

),

renamed as (

    select
        cast(user_id as bigint) as user_id,
        cast(ts as timestamp) as read_at,
        cast(dt as date) as read_date
    from source

)

select * from renamed
