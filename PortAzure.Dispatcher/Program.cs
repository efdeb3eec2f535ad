using PortAzure.Dispatcher;
using PortAzure.Dispatcher.Api;

// Content root at the app's own folder, wherever it was started from: appsettings.json is found (the Ingress's holds its routes).
var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
builder.AddServiceDefaults();
builder.AddDispatcherServices();

var app = builder.Build();
app.MapDefaultEndpoints();
app.MapOperatorApi();
app.Run();
