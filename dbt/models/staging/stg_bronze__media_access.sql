with

source as (

    select * from {{ source('bronze', 'media_access') }}

),

renamed as (

    select
        cast(media_id as bigint) as media_id,
        cast(ts as timestamp) as accessed_at,
        cast(dt as date) as access_date,
        cast(bytes as bigint) as bytes_served,
        cast(cdn_hit as boolean) as is_cdn_hit,
        cast(region as string) as region
    from source

)

select * from renamed
