using PortAzure.Ingress;

return RelayHost.Run(args,
    builder =>
    {
        builder.AddServiceDefaults();
        builder.AddIngressServices();
    },
    app =>
    {
        app.MapDefaultEndpoints();
        app.MapIngress();
    });
