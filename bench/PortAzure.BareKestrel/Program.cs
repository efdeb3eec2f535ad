var builder = WebApplication.CreateSlimBuilder(args);
builder.Logging.SetMinimumLevel(LogLevel.Warning);

var app = builder.Build();
app.MapPost("/{org}/_apis/public/distributedtask/webhooks/{webhook}", async (HttpContext context) =>
{
    var length = context.Request.ContentLength ?? 0;
    var body = new byte[length];
    await context.Request.Body.ReadExactlyAsync(body, context.RequestAborted);
    context.Response.StatusCode = StatusCodes.Status202Accepted;
});
app.Run();
