{#- Bench-only: the naive path, one runner job per tc_status beacon event. #}
tc_naive_store:
  runner.tc_naive.store:
    - args:
      - tag: {{ tag | json }}
      - data: {{ data | json }}
