with

source as (

    select * from {{ source('raw', 'cell_neighbours') }}

),

renamed as (

    select
        cast(hex_id as varchar) as hex_id,
        cast(neighbour_id as varchar) as neighbour_id,
        cast(ring as integer) as ring

    from source

)

select * from renamed
