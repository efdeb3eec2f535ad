using PortAzure.Ingress;

var builder = WebApplication.CreateBuilder(RelayHost.Options(args));
builder.AddServiceDefaults();
builder.AddIngressServices();

var app = builder.Build();
app.MapDefaultEndpoints();
app.MapIngress();
return app.RunUntilStopped();
