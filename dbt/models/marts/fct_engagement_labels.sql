{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key=['viewer_id', 'post_id', 'impressed_at'],
        partition_by=['impression_date'],
        merge_window_column='impression_date',
    )
}}

with

impressions as (

    select * from {{ ref('stg_bronze__impressions') }}
    where impressed_at < {{ as_of() }}
    {% if is_incremental() %}
        and impression_date >= {{ incremental_start_date('impression_date') }}
    {% endif %}

),

final as (

    select
        viewer_id,
        post_id,
        author_id,
        impressed_at,
        impression_date,
        surface,
        position,
        dwell_ms,
        cast(coalesce(is_liked, false) as int) as label_like,
        cast(coalesce(is_commented, false) as int) as label_comment,
        cast(coalesce(is_saved, false) as int) as label_save,
        cast(coalesce(is_shared, false) as int) as label_share,
        cast(coalesce(is_followed, false) as int) as label_follow,
        cast(coalesce(is_hidden, false) as int) as label_hide,
        cast(coalesce(dwell_ms > {{ var('dwell_threshold_ms') }}, false) as int) as label_dwell
    from impressions

)

select * from final
