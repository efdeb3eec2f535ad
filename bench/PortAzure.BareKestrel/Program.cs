using StackExchange.Redis;

var builder = WebApplication.CreateSlimBuilder(args);
builder.Logging.SetMinimumLevel(LogLevel.Warning);

// With BareKestrel:Redis set, every body is also appended to a stream before the 202: the least that any
// service answering "202 only once Redis holds the entry" must do (one XADD, one round trip). Without it,
// Kestrel alone. The client is set up as the relay's (PortAzure.Shared/Redis): replies on .NET's thread pool.
IDatabase? store = null;
if (builder.Configuration["BareKestrel:Redis"] is { Length: > 0 } connection)
{
    var options = ConfigurationOptions.Parse(connection);
    options.SocketManager = SocketManager.ThreadPool;
    store = (await ConnectionMultiplexer.ConnectAsync(options)).GetDatabase();
}

var app = builder.Build();
if (builder.Configuration.GetValue<bool>("BareKestrel:OtlpSink"))
{
    // The bench's --otlp: this process is the services' telemetry collector, not a baseline.
    OtlpSink.Map(app);
    app.Run();
    return;
}
app.MapPost("/{org}/_apis/public/distributedtask/webhooks/{webhook}", async (HttpContext context) =>
{
    var length = context.Request.ContentLength ?? 0;
    var body = new byte[length];
    await context.Request.Body.ReadExactlyAsync(body, context.RequestAborted);
    if (store is not null)
    {
        await store.StreamAddAsync("bench:store", "body", body);
    }
    context.Response.StatusCode = StatusCodes.Status202Accepted;
});
app.Run();
