using PortAzure.Dispatcher;
using PortAzure.Dispatcher.Api;

var builder = WebApplication.CreateBuilder(RelayHost.Options(args));
builder.AddServiceDefaults();
builder.AddDispatcherServices();

var app = builder.Build();
app.MapDefaultEndpoints();
app.MapOperatorApi();
return app.RunUntilStopped();
