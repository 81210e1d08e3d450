with

source as (

    select * from {{ source('bronze', 'dm_events') }}

),

renamed as (

    select
        cast(sender_id as bigint) as sender_id,
        cast(recipient_id as bigint) as recipient_id,
        cast(ts as timestamp) as sent_at,
        cast(dt as date) as sent_date
    from source

)

select * from renamed
