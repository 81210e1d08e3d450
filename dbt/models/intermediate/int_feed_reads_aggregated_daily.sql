{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['user_id', 'read_date'],
        partition_by=['read_date'],
        merge_window_column='read_date',
    )
}}

with

feed_reads as (

    select * from {{ ref('stg_bronze__feed_reads') }}
    where read_at < {{ as_of() }}
    {% if is_incremental() %}
        and read_date >= {{ incremental_start_date('read_date') }}
    {% endif %}

),

aggregated as (

    select
        user_id,
        read_date,
        count(*) as feed_reads,
        min(read_at) as first_read_at,
        max(read_at) as last_read_at
    from feed_reads
    group by user_id, read_date

)

select * from aggregated
