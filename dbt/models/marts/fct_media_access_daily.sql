{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['media_id', 'access_date'],
        partition_by=['access_date'],
        merge_window_column='access_date',
    )
}}

with

media_access as (

    select * from {{ ref('stg_bronze__media_access') }}
    where accessed_at < {{ as_of() }}
    {% if is_incremental() %}
        and access_date >= {{ incremental_start_date('access_date') }}
    {% endif %}

),

aggregated as (

    select
        media_id,
        access_date,
        cast(count(*) as bigint) as reads,  -- noqa: RF04
        -- A CDN miss is served from origin storage: the reads (and bytes) the storage tier pays for.
        cast(count_if(not is_cdn_hit) as bigint) as origin_reads,
        cast(count_if(is_cdn_hit) as bigint) as cdn_hits,
        cast(sum(bytes_served) as bigint) as bytes_served,
        cast(coalesce(sum(case when not is_cdn_hit then bytes_served end), 0) as bigint) as origin_bytes,
        max(accessed_at) as last_accessed_at
    from media_access
    group by media_id, access_date

)

select * from aggregated
