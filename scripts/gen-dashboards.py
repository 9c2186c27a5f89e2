#!/usr/bin/env python3
# Generates the Grafana dashboards of the Helm chart (helm/telemetry-stack/dashboards/*.json):
#   python3 scripts/gen-dashboards.py helm/telemetry-stack/dashboards
# Edit here, regenerate, commit both. tests/deploy/test_chart.py checks that every query names
# only metrics the stack exports.
import json
DS={"type":"prometheus","uid":"${datasource}"}
def ts(id,title,exprs,unit="short",x=0,y=0,w=12,h=8,legend=None):
    if isinstance(exprs,str): exprs=[exprs]
    return {"id":id,"type":"timeseries","title":title,"datasource":DS,
            "gridPos":{"x":x,"y":y,"w":w,"h":h},
            "fieldConfig":{"defaults":{"unit":unit},"overrides":[]},
            "options":{"legend":{"displayMode":"list","placement":"bottom"}},
            "targets":[{"refId":chr(65+i),"datasource":DS,"expr":e,"legendFormat":(legend[i] if legend and i < len(legend) else "")} for i,e in enumerate(exprs)]}
def stat(id,title,expr,unit="short",x=0,y=0,w=6,h=4):
    return {"id":id,"type":"stat","title":title,"datasource":DS,"gridPos":{"x":x,"y":y,"w":w,"h":h},
            "fieldConfig":{"defaults":{"unit":unit},"overrides":[]},
            "options":{"reduceOptions":{"calcs":["lastNotNull"]}},
            "targets":[{"refId":"A","datasource":DS,"expr":expr}]}
def table(id,title,expr,x=0,y=0,w=24,h=8):
    return {"id":id,"type":"table","title":title,"datasource":DS,"gridPos":{"x":x,"y":y,"w":w,"h":h},
            "targets":[{"refId":"A","datasource":DS,"expr":expr,"format":"table","instant":True}]}
def var_ds():
    return {"name":"datasource","type":"datasource","query":"prometheus","label":"Prometheus"}
def var(name,query,label):
    return {"name":name,"type":"query","label":label,"datasource":DS,"query":query,"refresh":2,"includeAll":False,"multi":False}
def dash(uid,title,panels,vars=(),desc=""):
    return {"uid":uid,"title":title,"description":desc,"tags":["gpu-telemetry"],"timezone":"browser","schemaVersion":39,
            "refresh":"30s","time":{"from":"now-6h","to":"now"},
            "templating":{"list":[var_ds(),*vars]},"panels":panels}
fleet=dash("gpu-telemetry-fleet","GPU telemetry / Fleet",[
    stat(1,"GPUs reporting","count(DCGM_FI_DEV_GPU_UTIL)",x=0),
    stat(2,"Mean GPU utilization","avg(DCGM_FI_DEV_GPU_UTIL)","percent",x=6),
    stat(3,"Power draw","sum(DCGM_FI_DEV_POWER_USAGE)","watt",x=12),
    stat(4,"GPUs with an XID","count(DCGM_FI_DEV_XID_ERRORS > 0) or vector(0)",x=18),
    ts(5,"Utilization by node","avg by (Hostname) (DCGM_FI_DEV_GPU_UTIL)","percent",0,4,legend=["{{Hostname}}"]),
    ts(6,"Framebuffer used by node","sum by (Hostname) (DCGM_FI_DEV_FB_USED)","decmbytes",12,4,legend=["{{Hostname}}"]),
    ts(7,"Hottest GPUs","topk(10, DCGM_FI_DEV_GPU_TEMP)","celsius",0,12,legend=["{{Hostname}} GPU {{gpu}}"]),
    ts(8,"Power by node","sum by (Hostname) (DCGM_FI_DEV_POWER_USAGE)","watt",12,12,legend=["{{Hostname}}"]),
    table(9,"GPUs with an XID or failed row remapping","DCGM_FI_DEV_XID_ERRORS > 0 or DCGM_FI_DEV_ROW_REMAP_FAILURE > 0",0,20),
],desc="Every GPU the api serves at /api/v1/metrics (dcgm-exporter names).")
node=dash("gpu-telemetry-node","GPU telemetry / Node",[
    ts(1,"GPU utilization",'DCGM_FI_DEV_GPU_UTIL{Hostname="$node"}',"percent",0,0,legend=["GPU {{gpu}}"]),
    ts(2,"Memory copy utilization",'DCGM_FI_DEV_MEM_COPY_UTIL{Hostname="$node"}',"percent",12,0,legend=["GPU {{gpu}}"]),
    ts(3,"Temperature",'DCGM_FI_DEV_GPU_TEMP{Hostname="$node"}',"celsius",0,8,legend=["GPU {{gpu}}"]),
    ts(4,"Power",'DCGM_FI_DEV_POWER_USAGE{Hostname="$node"}',"watt",12,8,legend=["GPU {{gpu}}"]),
    ts(5,"Framebuffer used",'DCGM_FI_DEV_FB_USED{Hostname="$node"}',"decmbytes",0,16,legend=["GPU {{gpu}}"]),
    ts(6,"SM clock",'DCGM_FI_DEV_SM_CLOCK{Hostname="$node"}',"rotmhz",12,16,legend=["GPU {{gpu}}"]),
    table(7,"Pods on this node's GPUs",'max by (gpu, UUID, namespace, pod, container) (DCGM_FI_DEV_GPU_UTIL{Hostname="$node", pod!=""})',0,24),
],[var("node","label_values(DCGM_FI_DEV_GPU_UTIL, Hostname)","Node")])
gpu=dash("gpu-telemetry-gpu","GPU telemetry / GPU",[
    ts(1,"Utilization",['DCGM_FI_DEV_GPU_UTIL{UUID="$uuid"}','DCGM_FI_DEV_MEM_COPY_UTIL{UUID="$uuid"}','DCGM_FI_DEV_ENC_UTIL{UUID="$uuid"}','DCGM_FI_DEV_DEC_UTIL{UUID="$uuid"}'],"percent",0,0,legend=["GPU","memory copy","encoder","decoder"]),
    ts(2,"Temperature",['DCGM_FI_DEV_GPU_TEMP{UUID="$uuid"}','DCGM_FI_DEV_MEMORY_TEMP{UUID="$uuid"}'],"celsius",12,0,legend=["GPU","memory"]),
    ts(3,"Power and energy",['DCGM_FI_DEV_POWER_USAGE{UUID="$uuid"}','rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{UUID="$uuid"}[5m]) / 1000'],"watt",0,8,legend=["draw","from the energy counter"]),
    ts(4,"Framebuffer",['DCGM_FI_DEV_FB_USED{UUID="$uuid"}','DCGM_FI_DEV_FB_FREE{UUID="$uuid"}','DCGM_FI_DEV_FB_RESERVED{UUID="$uuid"}'],"decmbytes",12,8,legend=["used","free","reserved"]),
    ts(5,"Clocks",['DCGM_FI_DEV_SM_CLOCK{UUID="$uuid"}','DCGM_FI_DEV_MEM_CLOCK{UUID="$uuid"}'],"rotmhz",0,16,legend=["SM","memory"]),
    ts(6,"Profiling (Hopper and later)",['DCGM_FI_PROF_GR_ENGINE_ACTIVE{UUID="$uuid"}','DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{UUID="$uuid"}','DCGM_FI_PROF_DRAM_ACTIVE{UUID="$uuid"}'],"percentunit",12,16,legend=["graphics engine","tensor pipe","DRAM"]),
    ts(7,"Errors",['DCGM_FI_DEV_XID_ERRORS{UUID="$uuid"}','increase(DCGM_FI_DEV_PCIE_REPLAY_COUNTER{UUID="$uuid"}[5m])','DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{UUID="$uuid"}','DCGM_FI_DEV_ROW_REMAP_FAILURE{UUID="$uuid"}'],"short",0,24,24,legend=["last XID","PCIe replays / 5m","uncorrectable remapped rows","row remap failure"]),
],[var("node","label_values(DCGM_FI_DEV_GPU_UTIL, Hostname)","Node"),var("uuid",'label_values(DCGM_FI_DEV_GPU_UTIL{Hostname="$node"}, UUID)',"GPU")])
pipe=dash("gpu-telemetry-pipeline","GPU telemetry / Pipeline health",[
    ts(1,"Records and samples in",["sum(rate(streamer_records_total[5m]))","sum(rate(streamer_samples_stored_total[5m]))"],"ops",0,0,legend=["records/s","samples stored/s"]),
    ts(2,"Rejected records by reason","sum by (reason) (rate(streamer_records_rejected_total[5m]))","ops",12,0,legend=["{{reason}}"]),
    ts(3,"Dead-lettered and errors",["sum(rate(streamer_dead_lettered_total[5m]))","sum by (error_type) (rate(streamer_errors_total[5m]))"],"ops",0,8,legend=["dead-lettered/s","{{error_type}}"]),
    ts(4,"Collectors: published, dropped, buffered",["sum(rate(collector_records_published_total[5m]))","sum(rate(collector_records_dropped_total[5m]))","sum(collector_buffered_records)"],"short",12,8,legend=["published/s","dropped/s","buffered"]),
    ts(5,"API responses by status","sum by (status) (rate(api_http_request_duration_seconds_count[5m]))","reqps",0,16,legend=["{{status}}"]),
    ts(6,"API errors and live streams",["sum by (error_type) (rate(api_errors_total[5m]))","sum(api_sse_open_streams)","sum(rate(api_sse_dropped_total[5m]))"],"short",12,16,legend=["{{error_type}}","open streams","streams dropped/s"]),
    ts(7,"Consumer lag and unflushed samples",["sum by (partition) (streamer_consumer_lag_records)","sum(streamer_samples_unflushed)"],"short",0,24,legend=["lag, partition {{partition}}","unflushed samples"]),
    ts(8,"Request latency p99 by route",["histogram_quantile(0.99, sum by (le, route) (rate(api_http_request_duration_seconds_bucket[5m])))","histogram_quantile(0.99, sum by (le, method) (rate(streamer_grpc_request_duration_seconds_bucket[5m])))"],"s",12,24,legend=["api {{route}}","streamer {{method}}"]),
],desc="The pipeline's own health: collectors, streamer and api, each from its own /metrics.")
import sys
out=sys.argv[1]
for name,d in [("fleet",fleet),("node",node),("gpu",gpu),("pipeline",pipe)]:
    open(f"{out}/gpu-telemetry-{name}.json","w").write(json.dumps(d,indent=1)+"\n")
print("ok")
