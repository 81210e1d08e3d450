with

source as (

    select * from {{ source('bronze', 'profile_visits') }}

),

renamed as (

    select
        cast(visitor_id as bigint) as visitor_id,
        cast(profile_id as bigint) as profile_id,
        cast(ts as timestamp) as visited_at,
        cast(dt as date) as visit_date
    from source

)

select * from renamed
